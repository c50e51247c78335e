"""The GreenChannel wire contract. Generated code lives in :mod:`greenchannel.v1`.

Importing this package first makes ``buf/validate/validate.proto`` importable for the generated
modules (see :mod:`greenchannel._validate_descriptor`).
"""

from greenchannel._validate_descriptor import install as _install_validate_descriptor

_install_validate_descriptor()
