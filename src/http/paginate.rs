//! Walking a multi-page result, for every pagination style the catalog uses, always within
//! the app's page bound.
//!
//! A `Pager` asks for one page at a time, so a poller can stop as soon as it reaches items
//! it has seen. Each style decides the next request from the previous answer: an offset or
//! page number that grows, GHL's `startAfter` + `startAfterId` pair (sent together: one
//! alone returns the first page forever), a cursor read from the body or the last item, or
//! Capsule's `Link: rel="next"`. A cursor that does not move ends the walk. A list the
//! catalog can ask for newest first gets that order sent explicitly (`newest_first`).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::error::HttpError;
use super::request::{PreparedRequest, prepare, prepare_next_url};
use super::{HttpClient, check_access};
use crate::catalog::{CursorSource, Operation, Pagination};
use crate::config::Connection;

/// One page: its body and the records in it.
#[derive(Debug, Clone)]
pub struct Page {
    /// 1 for the first page.
    pub number: u32,
    pub body: Value,
    pub records: Vec<Value>,
}

#[derive(Debug)]
enum Next {
    /// The next request, as inputs.
    Inputs(Map<String, Value>),
    /// The next request, as a URL the API gave (already resolved against the request URL).
    Url(url::Url),
    Done,
}

/// Reads pages of one operation until the last page or the bound.
#[derive(Debug)]
pub struct Pager<'c> {
    client: &'c HttpClient,
    connection: Arc<Connection>,
    op: Arc<Operation>,
    next: Next,
    last_request: Option<PreparedRequest>,
    pages_read: u32,
    bound: u32,
    /// The page size this walk uses (the user's limit, if they gave one).
    page_size: Option<u64>,
    last_cursor: Option<Value>,
    stopped_at_bound: bool,
    /// See `newest_first()`.
    newest_first: bool,
    /// The first request's path inputs (a next link names them only inside its path).
    path_inputs: Map<String, Value>,
}

impl<'c> Pager<'c> {
    /// A walk starting from `inputs`; `bound` caps the pages (the app's page bound if None).
    pub fn new(
        client: &'c HttpClient,
        connection: Arc<Connection>,
        op: Arc<Operation>,
        inputs: Map<String, Value>,
        bound: Option<u32>,
    ) -> Self {
        let bound = bound.unwrap_or(connection.app.page_bound.get()).max(1);
        let mut inputs = inputs;
        let page_size = first_page(&op.pagination, &mut inputs);
        let newest_first = match op.output.as_ref().and_then(|o| o.newest_first.as_ref()) {
            Some(order) => {
                order.fill(&mut inputs);
                order.holds(&inputs)
            }
            None => false,
        };
        let path_inputs = inputs
            .iter()
            .filter(|(name, _)| op.input(name).is_some_and(|i| i.location == crate::catalog::InputLocation::Path))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Pager {
            client,
            connection,
            op,
            next: Next::Inputs(inputs),
            path_inputs,
            last_request: None,
            pages_read: 0,
            bound,
            page_size,
            last_cursor: None,
            stopped_at_bound: false,
            newest_first,
        }
    }

    /// True when this walk lists records newest first (by creation) and no filter lets an
    /// old record join the list later: a poll of new items may stop at the first record it
    /// has seen. False means the list must be read whole (up to the bound).
    pub fn newest_first(&self) -> bool {
        self.newest_first
    }

    /// True when the walk ended because of the bound while more pages remained.
    pub fn stopped_at_bound(&self) -> bool {
        self.stopped_at_bound
    }

    /// The inputs of the page that would come next (for resuming a walk later), if any.
    pub fn next_inputs(&self) -> Option<Map<String, Value>> {
        match &self.next {
            Next::Inputs(i) => Some(i.clone()),
            // A next link (Capsule's) carries the whole request in its query: its parameters
            // are the operation's query inputs, so a later walk can start there. A parameter
            // the operation does not know would be lost, so such a link is not resumable.
            Next::Url(url) => {
                let mut inputs = Map::new();
                for (name, value) in url.query_pairs() {
                    let input = self.op.input(&name)?;
                    if input.location != crate::catalog::InputLocation::Query {
                        return None;
                    }
                    inputs.insert(name.into_owned(), Value::String(value.into_owned()));
                }
                // Path inputs are not in the query: keep them from the walk's first request.
                inputs.extend(self.path_inputs.clone());
                Some(inputs)
            }
            Next::Done => None,
        }
    }

    /// The next page, or None after the last one.
    pub async fn next_page(&mut self) -> Option<Result<Page, HttpError>> {
        if matches!(self.next, Next::Done) {
            return None;
        }
        if self.pages_read >= self.bound {
            self.stopped_at_bound = true;
            return None;
        }
        let request = match std::mem::replace(&mut self.next, Next::Done) {
            Next::Done => return None,
            Next::Inputs(inputs) => {
                if let Err(e) = check_access(&self.connection, &self.op) {
                    return Some(Err(e));
                }
                match prepare(&self.op, &self.connection, &inputs) {
                    Ok(r) => {
                        self.next = Next::Inputs(inputs);
                        r
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            Next::Url(url) => {
                let Some(previous) = &self.last_request else { return None };
                match prepare_next_url(&self.connection, &url, previous) {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e)),
                }
            }
        };
        let response = match self.client.send(&self.connection, &self.op, &request).await {
            Ok(r) => r,
            Err(e) => {
                // Leave the walk where it was, so a caller may try this page again.
                return Some(Err(e));
            }
        };
        self.pages_read += 1;
        let records: Vec<Value> = match &self.op.output {
            Some(output) => output.records(&response.body).into_iter().cloned().collect(),
            None => Vec::new(),
        };
        let previous_inputs = match std::mem::replace(&mut self.next, Next::Done) {
            Next::Inputs(i) => Some(i),
            _ => None,
        };
        self.next = self.decide_next(previous_inputs, &response.body, &records, response.next_link);
        self.last_request = Some(request);
        Some(Ok(Page { number: self.pages_read, body: response.body, records }))
    }

    fn decide_next(
        &mut self,
        previous: Option<Map<String, Value>>,
        body: &Value,
        records: &[Value],
        link: Option<url::Url>,
    ) -> Next {
        let full_page = |size: Option<u64>| size.is_none_or(|s| records.len() as u64 >= s) && !records.is_empty();
        match &self.op.pagination {
            Pagination::None => Next::Done,
            Pagination::LinkHeader { .. } => link.map(Next::Url).unwrap_or(Next::Done),
            Pagination::Offset { offset, .. } => {
                let Some(mut inputs) = previous else { return Next::Done };
                if !full_page(self.page_size) {
                    return Next::Done;
                }
                let current = inputs.get(offset).and_then(as_u64).unwrap_or(0);
                let step = self.page_size.unwrap_or(records.len() as u64);
                inputs.insert(offset.clone(), typed_like(&self.op, offset, current + step));
                Next::Inputs(inputs)
            }
            Pagination::Page { page, .. } => {
                let Some(mut inputs) = previous else { return Next::Done };
                if !full_page(self.page_size) {
                    return Next::Done;
                }
                let current = inputs.get(page).and_then(as_u64).unwrap_or(1);
                inputs.insert(page.clone(), typed_like(&self.op, page, current + 1));
                Next::Inputs(inputs)
            }
            Pagination::StartAfter { .. } => {
                let Some(mut inputs) = previous else { return Next::Done };
                let after = body.pointer("/meta/startAfter").filter(|v| !v.is_null());
                let after_id = body.pointer("/meta/startAfterId").filter(|v| !v.is_null());
                let (Some(after), Some(after_id)) = (after, after_id) else { return Next::Done };
                if !full_page(self.page_size) {
                    return Next::Done;
                }
                let cursor = Value::Array(vec![after.clone(), after_id.clone()]);
                if self.last_cursor.as_ref() == Some(&cursor) {
                    return Next::Done;
                }
                self.last_cursor = Some(cursor);
                inputs.insert("startAfter".into(), after.clone());
                inputs.insert("startAfterId".into(), after_id.clone());
                Next::Inputs(inputs)
            }
            Pagination::Cursor { param, next, has_more, .. } => {
                let Some(mut inputs) = previous else { return Next::Done };
                if let Some(flag) = has_more.as_ref().and_then(|p| p.get(body)) {
                    if flag != &Value::Bool(true) {
                        return Next::Done;
                    }
                } else if !full_page(self.page_size) {
                    return Next::Done;
                }
                let value = match next {
                    CursorSource::Body(path) => path.get(body).cloned(),
                    CursorSource::LastItem(path) => records.last().and_then(|r| path.get(r)).cloned(),
                };
                let Some(value) = value.filter(|v| !v.is_null()) else { return Next::Done };
                if self.last_cursor.as_ref() == Some(&value) {
                    return Next::Done;
                }
                self.last_cursor = Some(value.clone());
                inputs.insert(param.clone(), value);
                Next::Inputs(inputs)
            }
        }
    }
}

/// Sets the page-size (and start) inputs of the first page; returns the page size in use.
fn first_page(pagination: &Pagination, inputs: &mut Map<String, Value>) -> Option<u64> {
    let mut size_input = |name: &str, default: u32| -> u64 {
        match inputs.get(name).and_then(as_u64) {
            Some(user) => user,
            None => {
                inputs.insert(name.to_owned(), Value::from(default));
                u64::from(default)
            }
        }
    };
    match pagination {
        Pagination::None => None,
        Pagination::Offset { limit, page_size, .. } => Some(size_input(limit, *page_size)),
        Pagination::Page { size, page_size, .. } => Some(size_input(size, *page_size)),
        Pagination::StartAfter { limit, page_size } => Some(size_input(limit, *page_size)),
        Pagination::Cursor { limit: Some(limit), page_size, .. } => Some(size_input(limit, *page_size)),
        Pagination::Cursor { limit: None, .. } => None,
        Pagination::LinkHeader { size, page_size } => Some(size_input(size, *page_size)),
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A number for an input, as a string when the API types it as one (GHL's string limits).
fn typed_like(op: &Operation, input: &str, n: u64) -> Value {
    match op.input(input).map(|i| &i.ty) {
        Some(crate::catalog::InputType::String) => Value::String(n.to_string()),
        _ => Value::from(n),
    }
}

/// Every record of every page (up to the bound), for `call --all-pages`.
pub async fn collect_all(pager: &mut Pager<'_>) -> Result<(Vec<Value>, u32), HttpError> {
    let mut records = Vec::new();
    let mut pages = 0;
    while let Some(page) = pager.next_page().await {
        let page = page?;
        pages += 1;
        records.extend(page.records);
    }
    Ok((records, pages))
}
