"""Export, versioned registry, verification and trying out of published models (`published_model`)."""
