"""The contract layer (see README "Layout")."""
