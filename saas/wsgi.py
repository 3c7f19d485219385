import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "saas.settings.base")
application = get_wsgi_application()
# Import every view module now, when a web worker starts, not during its first requests.
get_resolver().url_patterns  # noqa: B018
