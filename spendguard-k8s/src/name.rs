//! Agent names are the ledger's: one definition of what a valid name is, everywhere.

pub use spendguard_ledger::AgentName;
