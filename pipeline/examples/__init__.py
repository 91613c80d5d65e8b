"""Example services that `pipeline dev` runs."""
