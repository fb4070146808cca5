"""An OpenAI-compatible facade under ``/openai/v1`` over captionq's jobs (docs/API.md)."""
