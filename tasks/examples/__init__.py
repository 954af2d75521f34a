"""Example task families, written as walk-throughs (docs/adding_a_task_family.md); import one to register it."""
