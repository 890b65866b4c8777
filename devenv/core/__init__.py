"""The core: a project's machines driven through the contract (Project), the provisioning plan,
status as data, doctor. Prints nothing: it reports through the Reporter it is given."""
