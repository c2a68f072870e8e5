//! The messages of the original's dialect that are not work: listing, switching, loading,
//! cancelling and status. Switches change only the session's own current model.

use lensd_core::residency::Tier;
use lensd_sched::residency::PreloadEvent;
use serde_json::{json, Value};

use super::listing::{self, DEVICE};
use super::messages::ClientMessage;
use super::ws::{known, model_for, server_default, Conn, Ctx, Stop};
use crate::api::v1::switch_to;
use crate::auth::Role;
use crate::error::ApiError;
use crate::tracker::Status;
use crate::views;

/// The messages that are not work: listing, switching, loading, cancelling, status.
pub(super) async fn control(
    ctx: &Ctx,
    conn: &mut Conn,
    msg: ClientMessage,
) -> Result<(), ApiError> {
    let state = &ctx.state;
    let who = &ctx.who;
    match msg {
        ClientMessage::ListModelGroups { .. } => {
            // A session that has chosen nothing reads the configuration's default.
            let current = state
                .default_model(&who.client)
                .or_else(|| server_default(&state.snapshot(), who.caller.role));
            ctx.send(listing::groups_list(state, who, current.as_deref()).await)
                .await;
        }
        ClientMessage::ListModels { .. } => {
            let snap = state.snapshot();
            let mut models = serde_json::Map::new();
            for g in &snap.config.groups {
                for m in g
                    .models
                    .iter()
                    .filter(|m| views::may_use(who.caller.role, g, m))
                {
                    models.insert(
                        m.id.clone(),
                        json!({"model_family": g.name,
                        "display_name": m.name, "description": m.description,
                        "layer": m.layer, "group_id": g.id}),
                    );
                }
            }
            ctx.send(json!({"type": "models_list", "models": models,
                "current_model": state.default_model(&who.client), "is_switching": false}))
                .await;
        }
        ClientMessage::SwitchModel { model_id }
        | ClientMessage::SwitchModelGrouped { model_id, .. } => switch(ctx, &model_id).await,
        ClientMessage::GetModelInfo { model_id } => {
            let snap = state.snapshot();
            let id = model_for(ctx, model_id)?;
            let (g, m) = known(&snap, who, &id)?;
            ctx.send(listing::model_info(state, who, &snap, g, m).await)
                .await;
        }
        ClientMessage::LoadModel { model_id, .. } => {
            who.caller.require(Role::Admin, "loading a model")?;
            let snap = state.snapshot();
            let (g, _) = known(&snap, who, &model_id)?;
            let (ok, fail) = (
                json!({"type": "model_loaded", "model_id": model_id, "device": DEVICE}),
                json!({"type": "model_load_error", "model_id": model_id}),
            );
            preload(ctx, g.id.clone(), ok, fail).await?;
        }
        ClientMessage::LoadGroup { group_id, .. } | ClientMessage::PreloadGroup { group_id } => {
            who.caller.require(Role::Admin, "loading a group")?;
            let ok = json!({"type": "group_preload_complete", "group_id": group_id,
                "device": DEVICE});
            let fail = json!({"type": "group_switch_status", "status": "failed",
                "group_id": group_id});
            preload(ctx, group_id, ok, fail).await?;
        }
        ClientMessage::UnloadGroup { group_id } => {
            who.caller.require(Role::Admin, "unloading a group")?;
            match state.residency.unload(&group_id, Tier::Host).await {
                Ok(_) => {
                    ctx.send(json!({"type": "group_unload_complete", "group_id": group_id}))
                        .await
                }
                Err(e) => {
                    ctx.send(json!({"type": "group_unload_error", "group_id": group_id,
                        "error": views::scrub(&state.snapshot(), &e.to_string())}))
                        .await
                }
            }
        }
        ClientMessage::ClearDevice { device_id } => {
            who.caller.require(Role::Admin, "clearing a device")?;
            let snap = state.snapshot();
            for g in &snap.config.groups {
                // In use and pinned entries stay; the report of each says so in the logs.
                let _ = state.residency.unload(&g.id, Tier::Disk).await;
            }
            ctx.send(
                json!({"type": "device_cleared", "device_id": device_id.unwrap_or(json!(DEVICE))}),
            )
            .await;
        }
        ClientMessage::CancelRequest { request_id } => {
            stop(ctx, conn, &request_id, Stop::Cancel).await?
        }
        ClientMessage::Interrupt { request_id, .. } => {
            let id = request_id.ok_or_else(|| {
                ApiError::BadRequest(
                    "`interrupt` needs the `request_id` of the request to stop".into(),
                )
            })?;
            stop(ctx, conn, &id, Stop::Interrupt).await?
        }
        ClientMessage::Status { request_id: None } => {
            ctx.send(listing::queue_update(state, &who.owner, |id| {
                conn.alias(id)
            }))
            .await
        }
        ClientMessage::Status {
            request_id: Some(id),
        } => {
            let t = match conn.get(&id) {
                Some(live) => live.current(),
                None => state
                    .requests
                    .get(&id)
                    .filter(|t| t.owner == who.owner)
                    .ok_or_else(|| ApiError::NotFound(format!("Request not found: {id}")))?,
            };
            let (status, error) = original_status(&t.status());
            ctx.send(
                json!({"type": "status_update", "request_id": id, "status": status,
                "error": error}),
            )
            .await;
        }
        ClientMessage::Ping {} => ctx.send(json!({"type": "pong"})).await,
        ClientMessage::Analyze(_)
        | ClientMessage::Generate(_)
        | ClientMessage::GenerateAndAnalyze { .. } => unreachable!("handled as work"),
    }
    Ok(())
}

/// A lensd status as the original's state string, with the error where there is one.
pub fn original_status(s: &Status) -> (&'static str, Option<String>) {
    match s {
        Status::Queued { .. } => ("queued", None),
        Status::Running { .. } => ("processing", None),
        Status::Completed => ("completed", None),
        Status::Error { message, .. } => ("failed", Some(message.clone())),
        Status::Cancelled { .. } => ("cancelled", None),
    }
}

/// A switch changes only this session's current model. The original's page waits for the
/// group's `completed` stage and `model_switch_complete`, which follow at once: the base
/// loads when the first request needs it (or now, for admins, whose switch preloads).
async fn switch(ctx: &Ctx, model_id: &str) {
    let state = &ctx.state;
    let snap = state.snapshot();
    let before = state
        .default_model(&ctx.who.client)
        .or_else(|| server_default(&snap, ctx.who.caller.role))
        .and_then(|m| snap.config.model(&m).map(|(g, _)| g.id.clone()));
    let admin = ctx.who.caller.role == Role::Admin;
    match switch_to(state, &ctx.who, model_id, admin).await {
        Ok(r) => {
            if before.as_deref() != Some(r.group_id.as_str()) {
                ctx.send(json!({"type": "group_switch_status", "status": "starting",
                    "group_id": r.group_id, "source_group_id": before, "device": DEVICE}))
                    .await;
                ctx.send(json!({"type": "group_switch_status", "status": "completed",
                    "group_id": r.group_id, "device": DEVICE}))
                    .await;
            }
            let message = if r.fast_switch {
                "Model switch completed: its base is loaded".to_string()
            } else {
                "Model switch completed: its base loads with the first request".to_string()
            };
            ctx.send(
                json!({"type": "model_switch_complete", "model_id": r.model_id,
                "group_id": r.group_id, "device_id": DEVICE, "fast_switch": r.fast_switch,
                "message": message}),
            )
            .await;
        }
        Err(e) => {
            ctx.send(json!({"type": "model_switch_error", "model_id": model_id,
                "error": e.body().message, "error_type": e.error_type()}))
                .await
        }
    }
}

/// Brings a group to the device, telling progress as `group_switch_status` stages and the end
/// as `ok` or `fail` (with its `error`).
async fn preload(ctx: &Ctx, group_id: String, ok: Value, mut fail: Value) -> Result<(), ApiError> {
    let mut events = ctx
        .state
        .residency
        .preload(&group_id, Tier::Device)
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let ctx = ctx.clone();
    let snap = ctx.state.snapshot();
    ctx.send(
        json!({"type": "group_switch_status", "status": "starting", "group_id": group_id,
        "device": DEVICE}),
    )
    .await;
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                PreloadEvent::Loading {
                    bytes_done,
                    bytes_total,
                    ..
                } => {
                    let pct = (bytes_done * 100).checked_div(bytes_total).unwrap_or(0);
                    ctx.send(json!({"type": "group_switch_status", "status": "progress",
                        "group_id": group_id, "message": format!("Loading: {pct}%")}))
                        .await;
                }
                PreloadEvent::Ready { .. } => {}
                PreloadEvent::Done { .. } => {
                    ctx.send(json!({"type": "group_switch_status", "status": "completed",
                        "group_id": group_id, "device": DEVICE}))
                        .await;
                    ctx.send(ok).await;
                    break;
                }
                PreloadEvent::Failed { error, .. } => {
                    fail["error"] = json!(views::scrub(&snap, &error));
                    ctx.send(fail).await;
                    break;
                }
            }
        }
    });
    Ok(())
}

/// Cancels one of this session's requests; its end is told by its forwarder.
async fn stop(ctx: &Ctx, conn: &Conn, id: &str, how: Stop) -> Result<(), ApiError> {
    let verb = if how == Stop::Cancel {
        "cancel"
    } else {
        "interrupt"
    };
    let live = conn.get(id).ok_or_else(|| {
        ApiError::NotFound(format!(
            "Cannot {verb} request {id}: it is not a request of this connection"
        ))
    })?;
    if live.finished() {
        return Err(ApiError::BadRequest(format!(
            "Cannot {verb} request {id}: it has already finished"
        )));
    }
    live.mark_stopped(how);
    let reason = if how == Stop::Cancel {
        "cancelled by the client"
    } else {
        "interrupted by the client"
    };
    ctx.state
        .scheduler
        .cancel_because(live.current().internal, reason)
        .await;
    Ok(())
}
