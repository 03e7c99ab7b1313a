"""`python -m bot` is the same as the `animabot` console script."""

from bot.cli import main

raise SystemExit(main())
