"""`python -m hardmine` runs the command-line interface."""

from hardmine.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
