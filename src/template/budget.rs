//! What keeps one render bounded: an output that refuses to grow past
//! `limits::MAX_RENDERED_BYTES`, and an `#each` that charges every iteration to the render's
//! work budget (`limits::spend`), so nested loops over long lists stop with an error instead
//! of running for minutes.
//!
//! The `#each` here behaves as handlebars' own (arrays and objects, `@index`, `@key`,
//! `@first`, `@last`, `this`, block params, `{{else}}`); it is written out because the
//! built-in cannot be wrapped (handlebars does not hand out registered helpers), and an
//! iteration whose body writes nothing would otherwise cost nothing.

use std::io::{Error as IoError, ErrorKind};

use handlebars::{
    BlockContext, BlockParams, Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext,
    RenderError, RenderErrorReason, Renderable,
};
use serde_json::Value;

use crate::limits::{MAX_RENDERED_BYTES, spend};

/// A string output with a size bound; every byte written is also charged as work.
#[derive(Debug, Default)]
pub(super) struct LimitedOutput {
    buf: String,
    /// Set when a write was refused, so the caller can tell why the render failed.
    pub(super) overflowed: bool,
    pub(super) out_of_work: bool,
}

impl LimitedOutput {
    pub(super) fn into_string(self) -> String {
        self.buf
    }
}

impl Output for LimitedOutput {
    fn write(&mut self, seg: &str) -> Result<(), IoError> {
        if self.buf.len() + seg.len() > MAX_RENDERED_BYTES {
            self.overflowed = true;
            return Err(IoError::new(ErrorKind::OutOfMemory, "rendered output too large"));
        }
        if spend(1 + seg.len() as u64).is_err() {
            self.out_of_work = true;
            return Err(IoError::other("render work exceeded"));
        }
        self.buf.push_str(seg);
        Ok(())
    }
}

/// `#each`, with every iteration charged to the work budget.
pub(super) struct BudgetedEach;

impl HelperDef for BudgetedEach {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let value = h.param(0).ok_or(RenderErrorReason::ParamNotFoundForIndex("each", 0))?;
        let Some(template) = h.template() else { return Ok(()) };
        let entries: Vec<(Value, &Value, String)> = match value.value() {
            Value::Array(list) if !list.is_empty() || h.inverse().is_none() => {
                list.iter().enumerate().map(|(i, v)| (Value::from(i), v, i.to_string())).collect()
            }
            Value::Object(map) if !map.is_empty() || h.inverse().is_none() => {
                map.iter().map(|(k, v)| (Value::String(k.clone()), v, k.clone())).collect()
            }
            _ => {
                return match h.inverse() {
                    Some(else_template) => else_template.render(r, ctx, rc, out),
                    None => Ok(()),
                };
            }
        };
        let is_object = value.value().is_object();
        let base_path = value.context_path();
        let mut block = BlockContext::new();
        match base_path {
            Some(p) => block.base_path_mut().clone_from(p),
            None => block.set_base_value(value.value().clone()),
        }
        rc.push_block(block);
        let len = entries.len();
        for (i, (key, item, relative)) in entries.into_iter().enumerate() {
            spend(1).map_err(|e| RenderError::from(RenderErrorReason::Other(e.to_string())))?;
            if let Some(block) = rc.block_mut() {
                block.set_local_var("first", Value::Bool(i == 0));
                block.set_local_var("last", Value::Bool(i + 1 == len));
                block.set_local_var("index", Value::from(i));
                if is_object {
                    block.set_local_var("key", key.clone());
                }
                match base_path {
                    Some(p) => {
                        let mut path = p.clone();
                        path.push(relative);
                        *block.base_path_mut() = path;
                    }
                    None => block.set_base_value(item.clone()),
                }
                let mut params = BlockParams::new();
                if let Some(name) = h.block_param() {
                    add_param(&mut params, name, base_path.is_some(), item)?;
                    block.set_block_params(params);
                } else if let Some((name, key_name)) = h.block_param_pair() {
                    add_param(&mut params, name, base_path.is_some(), item)?;
                    params.add_value(key_name, key)?;
                    block.set_block_params(params);
                }
            }
            template.render(r, ctx, rc, out)?;
        }
        rc.pop_block();
        Ok(())
    }
}

fn add_param<'a>(params: &mut BlockParams<'a>, name: &'a str, by_path: bool, item: &Value) -> Result<(), RenderError> {
    if by_path { params.add_path(name, Vec::new()) } else { params.add_value(name, item.clone()) }
}
