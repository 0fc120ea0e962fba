//! Policy model: YAML objects → validated model.
