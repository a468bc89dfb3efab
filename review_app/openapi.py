"""Write the review app's OpenAPI schema to review_app/frontend/openapi.json, the source of the front-end's
generated types (`npm run gen:types` -> src/api-types.ts); `make types` runs both.

    python -m review_app.openapi [path]

The schema is `create_app().openapi()` with the default settings, the websocket's events included
(routers/ws.py): no server runs and nothing under PEARL_HOME is read (the app's lifespan never starts).
tests/review_app/test_generated_types.py fails when the committed file is not what this writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OPENAPI_JSON = Path(__file__).resolve().parent / "frontend" / "openapi.json"


def app_schema() -> dict[str, Any]:
    from review_app.main import create_app

    return create_app().openapi()


def render(schema: dict[str, Any]) -> str:
    """The committed form: indented, keys in the app's order, one newline at the end (stable diffs)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else OPENAPI_JSON
    text = render(app_schema())
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    else:
        print(f"{path} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
