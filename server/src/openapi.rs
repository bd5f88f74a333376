//! The OpenAPI 3.1 description of the REST API, served at `GET /api/qwen-image/openapi.json`,
//! so script authors can generate clients. Written by hand next to the routes; a test checks
//! every route is described.

use serde_json::{json, Value};

fn error_response(what: &str) -> Value {
    json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn json_body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn json_ok(schema: &str) -> Value {
    json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

pub fn document() -> Value {
    // Every /api/ route passes the same door (`crate::door`), so every operation can answer these.
    let errors = json!({
        "400": error_response("malformed body, path or image encoding"),
        "401": error_response("missing or wrong API token (when the server requires one)"),
        "403": error_response("the Host or Origin is not this server's"),
        "404": error_response("no such job, or not yours"),
        "408": error_response("the body did not arrive within --request-timeout-secs"),
        "409": error_response("the job was cancelled"),
        "413": error_response("body or image larger than the server's limits"),
        "415": error_response("the body is not application/json"),
        "422": error_response("a field out of range, an undecodable image, an over-long prompt"),
        "429": error_response("the job queue is full; see Retry-After"),
        "503": error_response("the model is not available (see /status for the reason), or too many uploads at once"),
        "507": error_response("the results folder is full (--results-budget-mb)"),
    });
    let answers = |code: &str, ok: Value| {
        let mut r = errors.clone();
        r.as_object_mut().unwrap().insert(code.into(), ok);
        r
    };
    let with_errors = |ok: Value| answers("200", ok);
    let object_body = |properties: Value, required: &[&str]| {
        json!({"required": true, "content": {"application/json": {"schema": {
            "type": "object", "required": required, "properties": properties}}}})
    };
    let wrapped = |schema: &str| {
        object_body(
            json!({"request": {"$ref": format!("#/components/schemas/{schema}")}}),
            &["request"],
        )
    };
    let id_param = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let id_body = object_body(json!({"id": {"type": "string"}}), &["id"]);
    let string_ok = json!({"description": "OK", "content": {"application/json": {"schema": {"type": "string"}}}});
    let runs_ok = json!({"description": "OK", "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/RunSummary"}}}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Qwen Layers API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Decompose an image into RGBA layers (Qwen-Image-Layered) and edit a layer (Qwen-Image-Edit-2509). Layers come back composite first, then Layer 1 (bottom) … Layer N (top)."
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "DecomposeRequest": {
                    "type": "object", "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "description": "data:image/(png|jpeg|webp);base64,… or bare base64"},
                        "prompt": {"type": "string", "description": "describes the whole scene; empty = automatic caption"},
                        "negative_prompt": {"type": "string", "default": " "},
                        "layer_num": {"type": "integer", "minimum": 2, "maximum": 10},
                        "resolution": {"type": "integer", "enum": [640, 1024]},
                        "steps": {"type": "integer", "minimum": 1, "maximum": app::api::MAX_STEPS},
                        "cfg_scale": {"type": "number", "minimum": 0, "maximum": app::api::MAX_CFG_SCALE},
                        "seed": {"type": "integer", "minimum": 0},
                        "cfg_normalize": {"type": "boolean", "default": true},
                        "caption_language": {"type": "string", "enum": ["en", "cn"], "default": "en"}
                    }
                },
                "LayerImage": {"type": "object", "properties": {
                    "name": {"type": "string"}, "image": {"type": "string", "description": "PNG data URL"}, "index": {"type": "integer"}}},
                "DecomposeResponse": {"type": "object", "properties": {
                    "layers": {"type": "array", "items": {"$ref": "#/components/schemas/LayerImage"}},
                    "zip_data": {"type": "string", "description": "base64 ZIP: composite.png, NN_layer-N.png, manifest.json"},
                    "generation_time": {"type": "number"}, "layer_count": {"type": "integer"}, "resolution": {"type": "integer"},
                    "layer_order": {"type": "string", "const": "bottom-to-top"}, "seed": {"type": "integer"},
                    "width": {"type": "integer"}, "height": {"type": "integer"},
                    "caption": {"type": ["string", "null"], "description": "the automatic caption, when the prompt was empty"}}},
                "EditLayerRequest": {"type": "object", "required": ["layer_image", "instruction"],
                    "description": "`image` and `prompt` are accepted for `layer_image` and `instruction`",
                    "properties": {
                    "layer_image": {"type": "string", "description": "the RGBA layer: PNG data URL or bare base64"},
                    "instruction": {"type": "string", "description": "the edit instruction"},
                    "steps": {"type": "integer", "minimum": app::api::EDIT_MIN_STEPS, "maximum": app::api::MAX_STEPS},
                    "cfg_scale": {"type": "number", "minimum": 0, "maximum": app::api::MAX_CFG_SCALE},
                    "seed": {"type": "integer", "minimum": 0},
                    "keep_alpha": {"type": "boolean", "default": true}}},
                "RunSummary": {"type": "object", "properties": {
                    "id": {"type": "string"}, "finished_at": {"type": "integer", "description": "Unix seconds"},
                    "prompt": {"type": "string"}, "layer_count": {"type": "integer"}, "resolution": {"type": "integer"},
                    "width": {"type": "integer"}, "height": {"type": "integer"}, "seed": {"type": "integer"},
                    "steps": {"type": "integer"}, "cfg_scale": {"type": "number"}, "generation_time": {"type": "number"}}},
                "JobStarted": {"type": "object", "properties": {"id": {"type": "string"}}},
                "JobStatus": {"type": "object", "properties": {
                    "id": {"type": "string"},
                    "state": {"type": "string", "enum": ["queued", "running", "done", "failed", "cancelled"]},
                    "phase": {"type": "string"}, "step": {"type": "integer"}, "total_steps": {"type": "integer"},
                    "elapsed": {"type": "number"}, "eta_seconds": {"type": ["number", "null"]},
                    "queue_position": {"type": ["integer", "null"]}, "error": {"type": ["string", "null"]},
                    "result": {"oneOf": [{"$ref": "#/components/schemas/DecomposeResponse"}, {"type": "null"}]}}},
                "Config": {"type": "object"},
                "EditStatus": {"type": "object", "properties": {
                    "status": {"type": "string", "enum": ["ready", "idle", "unavailable"]},
                    "model_loaded": {"type": "boolean"}, "model": {"type": "string"},
                    "reason": {"type": ["string", "null"]}}},
                "Status": {"type": "object", "properties": {
                    "status": {"type": "string", "enum": ["ready", "idle", "unavailable"]},
                    "model_loaded": {"type": "boolean"}, "model": {"type": "string"}, "device": {"type": "string"},
                    "reason": {"type": ["string", "null"]}, "queue_depth": {"type": "integer"},
                    "queue_capacity": {"type": "integer"}, "busy": {"type": "boolean"}}}
            }
        },
        "paths": {
            "/api/qwen-image/decompose": {"post": {
                "summary": "Decompose an image and wait for the layers", "requestBody": json_body("DecomposeRequest"),
                "responses": with_errors(json_ok("DecomposeResponse"))}},
            "/api/qwen-image/jobs": {"post": {
                "summary": "Queue a decomposition; follow it with GET /jobs/{id}", "requestBody": json_body("DecomposeRequest"),
                "responses": answers("202", json!({"description": "queued", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobStarted"}}}}))}},
            "/api/qwen-image/jobs/{id}": {"get": {
                "summary": "A job's state, phase, step, ETA and (when done) result", "parameters": id_param,
                "responses": with_errors(json_ok("JobStatus"))}},
            "/api/qwen-image/jobs/{id}/cancel": {"post": {
                "summary": "Stop a job between denoising steps", "parameters": id_param,
                "responses": with_errors(json_ok("JobStatus"))}},
            "/api/qwen-image/edit-layer": {"post": {
                "summary": "Edit one RGBA layer by instruction; returns the edited layer",
                "requestBody": json_body("EditLayerRequest"),
                "responses": with_errors(json!({"description": "the edited layer", "content": {"image/png": {}}}))}},
            "/api/qwen-image/runs": {"get": {
                "summary": "The caller's finished runs kept on disk (a browser session's or the token holder's), newest first",
                "responses": with_errors(runs_ok.clone())}},
            "/api/qwen-image/config": {"get": {"summary": "Defaults and limits", "responses": with_errors(json_ok("Config"))}},
            "/api/qwen-image/status": {"get": {"summary": "Decompose model state and queue", "responses": with_errors(json_ok("Status"))}},
            "/api/qwen-image/edit-status": {"get": {"summary": "Edit model state (idle = loads, or downloads, on the first edit)", "responses": with_errors(json_ok("EditStatus"))}},
            "/api/qwen-image/openapi.json": {"get": {"summary": "This document", "responses": with_errors(json!({"description": "OpenAPI 3.1"}))}},
            "/api/session": {"post": {
                "summary": "Sign in with the API token: sets an HttpOnly cookie that the page's later calls carry",
                "requestBody": object_body(json!({"token": {"type": "string"}}), &["token"]),
                "responses": answers("204", json!({"description": "signed in"}))}},
            // The web app's server functions: the same types and errors as the REST routes.
            "/api/app/config": {"get": {"summary": "Server function: defaults and limits", "responses": with_errors(json_ok("Config"))}},
            "/api/app/status": {"get": {"summary": "Server function: decompose model state", "responses": with_errors(json_ok("Status"))}},
            "/api/app/edit_status": {"get": {"summary": "Server function: edit model state", "responses": with_errors(json_ok("EditStatus"))}},
            "/api/app/runs": {"get": {"summary": "Server function: this browser's kept runs", "responses": with_errors(runs_ok)}},
            "/api/app/decompose": {"post": {"summary": "Server function: decompose and wait",
                "requestBody": wrapped("DecomposeRequest"), "responses": with_errors(json_ok("DecomposeResponse"))}},
            "/api/app/start_decompose": {"post": {"summary": "Server function: queue a decomposition",
                "requestBody": wrapped("DecomposeRequest"), "responses": with_errors(json_ok("JobStarted"))}},
            "/api/app/job_status": {"post": {"summary": "Server function: a job's state",
                "requestBody": id_body.clone(), "responses": with_errors(json_ok("JobStatus"))}},
            "/api/app/cancel_job": {"post": {"summary": "Server function: cancel a job",
                "requestBody": id_body, "responses": with_errors(json_ok("JobStatus"))}},
            "/api/app/edit_layer": {"post": {"summary": "Server function: edit a layer; the answer is a PNG data URL",
                "requestBody": wrapped("EditLayerRequest"), "responses": with_errors(string_ok)}}
        }
    })
}
