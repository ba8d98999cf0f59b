"""One APIRouter per resource: the original API, OpenAI completions and models, operations."""
