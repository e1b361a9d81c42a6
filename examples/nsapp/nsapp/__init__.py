"""nsapp: the example app of this framework: one file that runs parts of itself under
registered names (reexec), in Linux namespaces, and keeps itself current from signed releases.

Start it with ``nsapp --help`` (console script), ``python -m nsapp`` or a ``.pyz`` from
``./build.sh``. Kept empty of imports: every start of the app, and of each registered child,
imports this package.
"""
