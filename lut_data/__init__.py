"""Devices measured and shipped with hwlat (read-only); found by name like profiled devices."""
