// Placeholder: being written (issue: Resilience).
