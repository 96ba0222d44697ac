import sys

from .cli import main

if __name__ == "__main__":  # not when a spawned process (vLLM's engine, under `serve`) imports it again
    sys.exit(main())
