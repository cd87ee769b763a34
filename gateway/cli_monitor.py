"""Placeholder until this area lands: adds its `fpgw` subcommands to the parser."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this area's subcommands."""
