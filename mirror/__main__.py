"""Allow `python -m mirror`."""

from .cli import main

if __name__ == "__main__":
    main()
