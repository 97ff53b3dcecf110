"""DICOMweb (PS3.18): QIDO-RS search, WADO-RS retrieve, STOW-RS store, under ``/dicomweb/``.

Layers as everywhere else: ``views`` parse the HTTP request and call one function of ``qido``,
``wado``, ``render`` or ``stow``; those reach instances only through ``selectors``.
This package must not import its views at import time: ``studies.services.ingest`` imports
``dicomjson`` from here.
"""
