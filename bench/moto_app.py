"""moto's S3 application alone, as a WSGI application, for a server that keeps connections open.

``moto_server`` runs every moto service behind one dispatcher (which finds the service of each
request by listing moto's packages on disk) on werkzeug's development server (which closes the
connection after every request). bench/tiering.py also serves moto's S3 application by itself
with gunicorn's threaded worker (``keep-alive`` mode), as an S3 endpoint is served: one
connection carries many requests, and a request costs the S3 work it asks for.
"""

from moto.moto_server.werkzeug_app import create_backend_app

app = create_backend_app("s3")
