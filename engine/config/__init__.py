"""What a run is made of before it starts: recipes and the plugins they name.

- ``recipe``: TOML recipes, dotted overrides, strict structuring into attrs classes (the ``[run]`` table).
- ``registry``: discovery through the ``hookmix.plugins`` entry-point group; broken plugins reported, never fatal.

The config rules plugins use are the public :mod:`engine.validators`.
"""
