"""Browser helper: a native messaging host, its installer, an opt-in localhost API and an MV3 extension.

* :mod:`client.helper.framing`  native messaging frames (4-byte native-endian length + UTF-8 JSON)
* :mod:`client.helper.service`  the request handler shared by both transports (check, ping; cache)
* :mod:`client.helper.native`   the host process (``python -m client.helper.native``)
* :mod:`client.helper.httpapi`  ``parallax helper serve-http`` (127.0.0.1, Host/Origin/token checks)
* :mod:`client.helper.install`  host manifests and the launcher (``parallax helper install``)
* ``extension/``                the unpacked MV3 extension (Chromium and Firefox)

See ``client/helper/README.md``.
"""
