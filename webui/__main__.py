"""python -m webui [--host 0.0.0.0] [--port N] [--auth user:password] ... (what ./run.sh runs)."""
import sys

from engine.errors import CadenzaError
from webui.app import launch
from engine.settings import from_args


def main(argv=None) -> int:
    try:
        launch(from_args(argv))
    except CadenzaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
