"""symnet's version, in a module of its own: any stage may need it (cache keys), and none
may import the package root, which imports every stage."""

__version__ = "0.1.0"
