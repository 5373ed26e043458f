//! Azure OpenAI (`*.openai.azure.com`): OpenAI's wire format, addressed by deployment.
//!
//! Paths: `/openai/deployments/{deployment}/chat/completions?api-version=…` (also
//! `/completions`, `/embeddings`), where the model is the operator's deployment → model map
//! (an unmapped deployment is `UnknownModel` naming the deployment); and the newer
//! `/openai/v1/…` and `/openai/responses` paths, where the body's `model` names a deployment
//! (mapped when the map has it) or a model.
//!
//! # Usage on the wire
//! As OpenAI (see [`super::openai`]). Streams carry extra chunks with `choices: []` and
//! `prompt_filter_results` but no usage; only a chunk with `choices: []` AND a usage object is
//! the usage chunk. `stream_options.include_usage` exists from api-version 2024-09-01 (and in
//! the v1 API): it is injected there only, since older versions refuse unknown options; an older
//! stream then reports no usage and the reservation is charged.

use super::body_scan::OpenAiRequest;
use super::openai::{self, route_read, Endpoint, Flavor, UNKNOWN_ENDPOINT};
use super::{
    query_param, short, split_path, Adapter, PricingError, ProviderId, Quote, QuoteOptions, Route,
};
use crate::prices::PriceTable;

/// The Azure OpenAI adapter.
#[derive(Debug)]
pub struct AzureOpenAi;

pub(crate) static AZURE: AzureOpenAi = AzureOpenAi;

const FLAVOR: Flavor = Flavor {
    responses: true,
    ..super::openai::plain(&[], true, "max_completion_tokens")
};

/// First api-version (`YYYY-MM-DD[-preview]`) that knows `stream_options`.
const INCLUDE_USAGE_SINCE: &str = "2024-09-01";

#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// `/openai/deployments/{name}/…`
    Deployment(&'a str),
    /// `/openai/v1/…` or `/openai/responses`: the body names it.
    Body,
}

fn classify<'a>(
    method: &http::Method,
    path_and_query: &'a str,
) -> Result<(Endpoint, Target<'a>, bool), Route> {
    let (path, query) = split_path(path_and_query);
    let new_enough = query_param(query, "api-version")
        .is_some_and(|v| v.get(..10).is_some_and(|d| d >= INCLUDE_USAGE_SINCE));
    let (target, rest, inject) = if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
        (Target::Deployment(name), format!("/{rest}"), new_enough)
    } else if let Some(rest) = path.strip_prefix("/openai/v1") {
        (Target::Body, rest.to_string(), true)
    } else if let Some(rest) = path.strip_prefix("/openai") {
        (Target::Body, rest.to_string(), new_enough)
    } else {
        return Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT));
    };
    match openai::route_rest(method, &rest, &FLAVOR) {
        Some(Ok(endpoint)) => Ok((endpoint, target, inject)),
        Some(Err(r)) => Err(r),
        None => Err(route_read(method, path).unwrap_or(UNKNOWN_ENDPOINT)),
    }
}

impl Adapter for AzureOpenAi {
    fn id(&self) -> ProviderId {
        ProviderId::AzureOpenAi
    }

    fn route(&self, method: &http::Method, path_and_query: &str) -> Route {
        match classify(method, path_and_query) {
            Ok(_) => Route::Priced,
            Err(r) => r,
        }
    }

    fn quote(
        &self,
        method: &http::Method,
        path_and_query: &str,
        _headers: &http::HeaderMap,
        body: &[u8],
        prices: &PriceTable,
        opts: &QuoteOptions,
    ) -> Result<Quote, PricingError> {
        let (endpoint, target, inject) =
            classify(method, path_and_query).map_err(|route| PricingError::NotPricedRoute {
                provider: ProviderId::AzureOpenAi,
                route,
            })?;
        let req = OpenAiRequest::parse(body)?;
        let model = match target {
            Target::Deployment(dep) => opts
                .azure_deployments
                .get(dep)
                .ok_or_else(|| PricingError::UnknownModel { model: short(dep) })?
                .as_str(),
            Target::Body => {
                let named = req.model()?;
                opts.azure_deployments
                    .get(named)
                    .map_or(named, String::as_str)
            }
        };
        let (canonical, price) = prices
            .lookup_for(ProviderId::AzureOpenAi, model)
            .ok_or_else(|| PricingError::UnknownModel {
                model: short(model),
            })?;
        openai::quote_body(
            endpoint,
            &FLAVOR,
            ProviderId::AzureOpenAi,
            body,
            &req,
            canonical,
            price,
            opts,
            inject,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes() {
        let a = &AZURE;
        let p = "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21";
        assert_eq!(a.route(&Method::POST, p), Route::Priced);
        assert_eq!(
            a.route(&Method::POST, "/openai/v1/chat/completions"),
            Route::Priced
        );
        assert_eq!(
            a.route(&Method::POST, "/openai/v1/responses"),
            Route::Priced
        );
        assert_eq!(
            a.route(
                &Method::POST,
                "/openai/responses?api-version=2025-04-01-preview"
            ),
            Route::Priced
        );
        assert_eq!(
            a.route(&Method::GET, "/openai/deployments?api-version=2024-10-21"),
            Route::Free
        );
        assert!(matches!(
            a.route(&Method::POST, "/openai/v1/batches"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(&Method::POST, "/openai/files?api-version=2024-10-21"),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(
                &Method::POST,
                "/openai/deployments/d/images/generations?api-version=2024-10-21"
            ),
            Route::Unpriced { .. }
        ));
        assert!(matches!(
            a.route(&Method::GET, "/openai/realtime?deployment=x"),
            Route::Unpriced { .. }
        ));
    }

    #[test]
    fn include_usage_only_on_new_api_versions() {
        let new = classify(
            &Method::POST,
            "/openai/deployments/d/chat/completions?api-version=2024-10-21",
        )
        .unwrap();
        assert!(new.2);
        let preview = classify(
            &Method::POST,
            "/openai/deployments/d/chat/completions?api-version=2025-01-01-preview",
        )
        .unwrap();
        assert!(preview.2);
        let old = classify(
            &Method::POST,
            "/openai/deployments/d/chat/completions?api-version=2024-02-01",
        )
        .unwrap();
        assert!(!old.2);
        let v1 = classify(&Method::POST, "/openai/v1/chat/completions").unwrap();
        assert!(v1.2);
    }
}
