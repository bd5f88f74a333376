//! The OpenAPI 3.1 description of every `/api/` route, served at
//! `GET /api/qwen-image/openapi.json`: generated (utoipa) from the contract's Rust types in
//! `app::api` and the REST handlers' `#[utoipa::path]` attributes; the server functions, whose
//! handlers Leptos generates, are declared here. Limits come from `app::api`'s constants. Tests
//! check it against the live routes, and `scripts/schemathesis.sh` fuzzes the server from it.

use app::api::{
    ApiError, ConfigResponse, DecomposeRequest, DecomposeResponse, EditJobStatus, EditLayerRequest, EditStatusResponse,
    JobStarted, JobStatus, RunSummary, StatusResponse, LAYER_RANGE, MAX_CFG_SCALE, MAX_STEPS, RESOLUTIONS,
};
use serde_json::{json, Value};
use utoipa::{OpenApi, ToSchema};

use crate::http_error::DoorErrors;

// The server functions' bodies: their arguments as one JSON object (Leptos' `Json` codec).

/// `start_decompose` and `decompose`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct DecomposeCall {
    request: DecomposeRequest,
}

/// `edit_layer`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct EditCall {
    request: EditLayerRequest,
}

/// `job_status` and `cancel_job`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct JobCall {
    id: String,
}

/// `POST /api/session`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct SignIn {
    token: String,
}

#[utoipa::path(get, path = "/api/app/config", responses((status = 200, body = ConfigResponse), DoorErrors))]
#[allow(dead_code)]
fn app_config() {}

#[utoipa::path(get, path = "/api/app/status", responses((status = 200, body = StatusResponse), DoorErrors))]
#[allow(dead_code)]
fn app_status() {}

#[utoipa::path(get, path = "/api/app/edit_status", responses((status = 200, body = EditStatusResponse), DoorErrors))]
#[allow(dead_code)]
fn app_edit_status() {}

#[utoipa::path(get, path = "/api/app/runs", responses((status = 200, body = Vec<RunSummary>), DoorErrors))]
#[allow(dead_code)]
fn app_runs() {}

#[utoipa::path(post, path = "/api/app/decompose", request_body = DecomposeCall,
    responses((status = 200, body = DecomposeResponse), DoorErrors))]
#[allow(dead_code)]
fn app_decompose() {}

#[utoipa::path(post, path = "/api/app/start_decompose", request_body = DecomposeCall,
    responses((status = 200, body = JobStarted), DoorErrors))]
#[allow(dead_code)]
fn app_start_decompose() {}

#[utoipa::path(post, path = "/api/app/job_status", request_body = JobCall, responses((status = 200, body = JobStatus), DoorErrors))]
#[allow(dead_code)]
fn app_job_status() {}

#[utoipa::path(post, path = "/api/app/cancel_job", request_body = JobCall, responses((status = 200, body = JobStatus), DoorErrors))]
#[allow(dead_code)]
fn app_cancel_job() {}

/// The answer is the edited layer as a PNG data URL.
#[utoipa::path(post, path = "/api/app/edit_layer", request_body = EditCall,
    responses((status = 200, description = "a PNG data URL", body = String), DoorErrors))]
#[allow(dead_code)]
fn app_edit_layer() {}

#[utoipa::path(post, path = "/api/app/start_edit", request_body = EditCall,
    responses((status = 200, body = JobStarted), DoorErrors))]
#[allow(dead_code)]
fn app_start_edit() {}

#[utoipa::path(post, path = "/api/app/edit_job_status", request_body = JobCall,
    responses((status = 200, body = EditJobStatus), DoorErrors))]
#[allow(dead_code)]
fn app_edit_job_status() {}

#[utoipa::path(post, path = "/api/app/cancel_edit", request_body = JobCall,
    responses((status = 200, body = EditJobStatus), DoorErrors))]
#[allow(dead_code)]
fn app_cancel_edit() {}

/// Sign in with the API token: sets an HttpOnly cookie that the page's later calls carry.
#[utoipa::path(post, path = "/api/session", request_body = SignIn,
    responses((status = 204, description = "signed in"), DoorErrors))]
#[allow(dead_code)]
fn session() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Qwen Layers API",
        description = "Decompose an image into RGBA layers (Qwen-Image-Layered) and edit a layer (Qwen-Image-Edit-2509). \
                       Layers come back composite first, then Layer 1 (bottom) … Layer N (top). Every route, REST and \
                       the web app's server functions (/api/app/), answers errors as {\"error\": …}."
    ),
    paths(
        crate::routes::decompose, crate::routes::edit_layer, crate::routes::start_job, crate::routes::job_status,
        crate::routes::cancel_job, crate::routes::runs, crate::routes::config, crate::routes::status,
        crate::routes::edit_status, crate::routes::openapi, crate::routes::start_edit_job,
        crate::routes::edit_job_status, crate::routes::cancel_edit_job, crate::routes::split_layer,
        app_config, app_status, app_edit_status, app_runs, app_decompose, app_start_decompose, app_job_status,
        app_cancel_job, app_edit_layer, app_start_edit, app_edit_job_status, app_cancel_edit, session
    ),
    components(schemas(ApiError)),
    modifiers(&BearerToken)
)]
struct ApiDoc;

/// The optional `--api-token`, as a bearer scheme.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document, with the contract's limits (from `app::api`) on the request fields.
pub fn document() -> Value {
    let mut api = ApiDoc::openapi();
    api.merge(crate::z_image::ZImageApi::openapi());
    let mut doc = serde_json::to_value(api).expect("the OpenAPI document serialises");
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let schemas = &mut doc["components"]["schemas"];
    // `layer_num` is a count in the layer range or "auto": the range goes on the count.
    if let Some(count) = schemas["LayerNum"]["oneOf"][0].as_object_mut() {
        count.insert("minimum".into(), json!(LAYER_RANGE.start()));
        count.insert("maximum".into(), json!(LAYER_RANGE.end()));
    }
    let limits = [
        (
            "resolution",
            json!({"enum": RESOLUTIONS.iter().map(|&r| Some(r)).chain([None]).collect::<Vec<_>>()}),
        ),
        ("steps", json!({"minimum": 1, "maximum": MAX_STEPS})),
        ("cfg_scale", json!({"minimum": 0, "maximum": MAX_CFG_SCALE})),
    ];
    for schema in [
        "DecomposeRequest",
        "EditLayerRequest",
        "GenerateRequest",
        "SplitLayerRequest",
    ] {
        for (field, limit) in &limits {
            let property = schemas
                .get_mut(schema)
                .and_then(|s| s.get_mut("properties"))
                .and_then(|p| p.get_mut(*field));
            if let Some(property) = property.and_then(Value::as_object_mut) {
                property.extend(limit.as_object().unwrap().clone());
            }
        }
    }
    schemas["EditLayerRequest"]["properties"]["steps"]["minimum"] = json!(app::api::EDIT_MIN_STEPS);
    crate::z_image::document_limits(schemas);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_num_is_a_count_in_range_or_auto() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let variants = schemas["LayerNum"]["oneOf"].as_array().unwrap();
        assert_eq!(variants[0]["type"], "integer");
        assert_eq!(
            (variants[0]["minimum"].clone(), variants[0]["maximum"].clone()),
            (json!(2), json!(10))
        );
        assert_eq!(variants[1]["$ref"], "#/components/schemas/AutoWord");
        assert_eq!(schemas["AutoWord"]["enum"], json!(["auto"]));
        let reasons = &schemas["DropReason"]["enum"];
        assert_eq!(reasons, &json!(["empty", "duplicate", "covered"]));
        assert!(schemas["DecomposeResponse"]["properties"]["auto_layers"].is_object());
    }
}
