//! The live price table: bundled prices, overridden by the config and by `spendguard price set`
//! (persisted in the ledger's settings, so overrides survive restarts).

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use spendguard_ledger::Ledger;
use spendguard_pricing::{MicroUsd, ModelPrice, PriceTable};

use crate::metrics::labels::ModelLabels;

const SETTING_PREFIX: &str = "price/";
/// Output and context bounds for a model the bundled table does not know (used for worst cases when
/// a client sets no limit): generous, so a reservation is never too small.
pub const NEW_MODEL_MAX_OUTPUT: u64 = 128_000;
pub const NEW_MODEL_CONTEXT: u64 = 1_000_000;

/// A price as operators set it (USD per million tokens).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    // USD numbers on the wire and in TOML (e.g. 2.5), exact micro-dollars inside.
    #[serde(with = "spendguard_ledger::usd")]
    pub input_per_mtok: MicroUsd,
    #[serde(with = "spendguard_ledger::usd")]
    pub output_per_mtok: MicroUsd,
    #[serde(default, with = "spendguard_ledger::usd::option")]
    pub cached_input_per_mtok: Option<MicroUsd>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub context_window: Option<u64>,
}

#[derive(Clone)]
pub struct Prices {
    table: Arc<RwLock<PriceTable>>,
    /// The stored overrides last applied (to notice ones another node set, via the cluster store).
    applied: Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    /// The metrics' `model` label values: the table's names, published on every change.
    labels: Arc<ModelLabels>,
}

impl Prices {
    /// The bundled table with persisted overrides applied; its names become `labels`.
    pub fn load(ledger: &Ledger, labels: Arc<ModelLabels>) -> Prices {
        let table = PriceTable::bundled();
        labels.publish(table.iter().map(|(name, _)| name));
        let prices = Prices {
            table: Arc::new(RwLock::new(table)),
            applied: Arc::default(),
            labels,
        };
        prices.apply_stored(ledger);
        prices
    }

    /// Applies the stored overrides if they changed since the last call (with a cluster store,
    /// `price set` on another node arrives in the ledger's settings within a poll).
    pub fn reload_if_changed(&self, ledger: &Ledger) {
        let now = ledger.settings_with_prefix(SETTING_PREFIX);
        let changed = *self.applied.lock().unwrap_or_else(|p| p.into_inner()) != now;
        if changed {
            tracing::info!("price overrides changed in the cluster store; applying them");
            self.apply_stored(ledger);
        }
    }

    fn apply_stored(&self, ledger: &Ledger) {
        let prices = self;
        let stored = ledger.settings_with_prefix(SETTING_PREFIX);
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = stored.clone();
        for (key, value) in stored {
            let model = key.trim_start_matches(SETTING_PREFIX);
            match serde_json::from_value::<PriceOverride>(value) {
                Ok(o) => prices.apply(model, &o),
                Err(e) => tracing::warn!(model, "ignoring unreadable stored price override: {e}"),
            }
        }
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, PriceTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, model: &str, o: &PriceOverride) {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        let base = t.lookup(model).map(|(_, p)| p.clone());
        let mut p = base.clone().unwrap_or(ModelPrice {
            max_output_tokens: NEW_MODEL_MAX_OUTPUT,
            context_window: NEW_MODEL_CONTEXT,
            ..ModelPrice::default()
        });
        p.input_per_mtok = o.input_per_mtok;
        p.output_per_mtok = o.output_per_mtok;
        p.cached_input_per_mtok = o.cached_input_per_mtok.or(p.cached_input_per_mtok);
        if let Some(m) = o.max_output_tokens {
            p.max_output_tokens = m;
        }
        if let Some(c) = o.context_window {
            p.context_window = c;
        }
        // An override replaces the tiers too: the operator's price is the price.
        p.long_context = None;
        t.set(model, p);
        // Under the write lock, so two changes cannot publish out of order.
        self.labels.publish(t.iter().map(|(name, _)| name));
    }

    /// Sets and persists an override.
    pub async fn set(
        &self,
        ledger: &Ledger,
        model: &str,
        o: PriceOverride,
    ) -> Result<(), spendguard_ledger::LedgerError> {
        let v = serde_json::to_value(&o).unwrap_or_default();
        ledger
            .put_shared_setting(&format!("{SETTING_PREFIX}{model}"), v)
            .await?;
        self.apply(model, &o);
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) =
            ledger.settings_with_prefix(SETTING_PREFIX);
        Ok(())
    }

    pub fn source(&self) -> (String, String) {
        let t = self.read();
        (t.source().to_string(), t.date().to_string())
    }
}
