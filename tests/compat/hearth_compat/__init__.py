# SPDX-License-Identifier: Apache-2.0
"""Helpers of the E2B SDK compatibility suite (see tests/compat/conftest.py)."""
