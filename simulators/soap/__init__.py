"""Simulated terminals that answer the SOAP web service (``POST /iWsService``): see terminal.py and codec.py."""

from simulators.soap.fleet import SoapFleet, soap_specs_from_entries
from simulators.soap.terminal import SoapSpec, SoapTerminal

__all__ = ["SoapFleet", "SoapSpec", "SoapTerminal", "soap_specs_from_entries"]
