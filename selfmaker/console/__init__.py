"""The web console of `selfmaker up`: what runs, how it is doing, and the jobs — read-only, in a browser.

``routes`` serves the pages, the static files (the vendored uPlot charts included: no CDN, no network) and
the JSON the pages draw; ``views`` builds that JSON from :class:`selfmaker.services.Services`; ``series``
holds the time series; ``sessions`` the login that lets a browser in where the API asks for SigV4
signatures. docs/observability.md#web-console describes it for users.
"""
