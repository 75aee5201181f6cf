"""The verdict on the host: factory and adopted configurations, verify, rollback, export.

``records`` holds the typed files (``state_dir/host/factory.json``, ``state_dir/host/adopted.json``)
and :class:`~kloros_orchestrator.host.records.KnobSetting`, a knob's value with where it lives;
``export`` turns settings into TuneD, sysctl.d/tmpfiles.d and systemd files.
"""
