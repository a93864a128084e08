"""Sample generators (MC dropout, ensembles) and demo models."""
