"""Slicer's side without Qt: view geometry, the segment-editor logic, runtime readiness, the self-test scenario."""
