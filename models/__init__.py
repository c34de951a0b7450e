"""Example networks built from poolexport layers (installed as poolexport.models)."""
