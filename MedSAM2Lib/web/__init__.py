"""``medsam2 web``: the MedSAM2 tool in a web browser, on Slicer's own core served by trame-slicer
(``pip install 'medsam2-slicer[web]'``). The interaction is the desktop effect's (``slicer_glue``); this package only
wires browser views and buttons to it."""
