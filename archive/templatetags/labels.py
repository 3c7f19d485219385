"""Template filters for figures: ``{% load labels %}`` then ``{{ n|bytes_label }}`` (binary units,
as every page shows bytes; Django's ``filesizeformat`` says "MB" for MiB and is not used);
``{{ study.patient_name|person_name }}`` for a DICOM person name (``Curie^Marie`` -> ``Curie, Marie``)."""

from __future__ import annotations

from django import template

from tenants import labels

register = template.Library()

register.filter("bytes_label", labels.bytes_label)
register.filter("duration_label", labels.duration_label)
register.filter("person_name", labels.person_name_label)
