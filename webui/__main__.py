"""python -m webui [--host 0.0.0.0] [--port N] [--auth user:password] ... (what ./run.sh runs)."""
import sys

from engine.errors import CadenzaError
from webui.app import launch
from engine.settings import from_args


def main(argv=None) -> int:
    try:
        settings = from_args(argv)
        if settings.write_config:  # for admins who run the models with `serve deploy`
            from engine.service.remote import write_config

            print(f"wrote {write_config(settings, settings.write_config)}: serve deploy it on the cluster, then "
                  f"./run.sh --ray ADDRESS uses it")
            return 0
        launch(settings)
    except CadenzaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
