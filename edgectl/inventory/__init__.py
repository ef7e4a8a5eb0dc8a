"""Device inventories for large fleets: a Fleet's ``spec.inventory`` names CSV files and Ansible inventories (INI or
YAML) next to the manifest; each row or host becomes a :class:`~edgectl.spec.Device`, checked like a device written
in the manifest, with ``file:line`` in every error.

CSV: a header row, then one device per row. Columns: ``name`` (required), ``profile``, ``transport`` (``ssh`` or
``pull``; default ``ssh``), ``host``, ``user``, ``port``, ``key_file``, and ``label.<key>`` per label; an empty cell
is an absent value.

Ansible: every host is an SSH device named after the host; ``ansible_host`` (default: the host name),
``ansible_user``, ``ansible_port`` and ``ansible_ssh_private_key_file`` make its transport
(``ansible_connection=local``: this machine), ``edgectl_profile`` its profile, and every group it belongs to (not
``all`` or ``ungrouped``) a label ``<group>: "true"``. Group variables apply to the hosts of the group and of its
children, host variables win. Host ranges (``pi-[01:50].shop``, ``[a:f]``, ``[01:50:2]``) are expanded. Other
variables are Ansible's business and ignored.

The source's ``profile`` fills in a device with none; its ``labels`` are added to every device (a device's own
label of the same key wins). Reads files, writes nothing; no Ansible needed.
"""

from edgectl.inventory.fleet import expand_fleet

__all__ = ["expand_fleet"]
