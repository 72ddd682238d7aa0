"""Compatibility namespace: plugins written for the original framework import from here."""
