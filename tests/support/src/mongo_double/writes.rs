//! The double's writes, as the server logs them: `insert` and `delete` change the stored documents and
//! append the change events and the oplog entries a primary would have written.

use std::cmp::Ordering;

use bson::{doc, Bson, DateTime, Document};

use super::query::{compare_values, matches, BAD_VALUE};
use super::{change_event, error, lock, namespace, Connection, DUPLICATE_KEY};

impl Connection {
    /// `insert`: stores each document (with a new ObjectId when it has no `_id`) and logs it as the
    /// server would, an insert event in the change stream and an `i` entry in the oplog. A taken `_id` is
    /// a write error (E11000), which ends an ordered batch.
    pub(super) fn insert(&self, body: &Document) -> Document {
        let namespace = namespace(body, "insert");
        let Some((db, coll)) = namespace.split_once('.') else {
            return error(BAD_VALUE, "insert without a namespace");
        };
        let ordered = body.get_bool("ordered").unwrap_or(true);
        let documents = body.get_array("documents").cloned().unwrap_or_default();
        let mut state = lock(&self.state);
        let (mut inserted, mut errors) = (0, Vec::new());
        for (index, document) in documents.into_iter().enumerate() {
            let Bson::Document(document) = document else {
                return error(BAD_VALUE, "insert documents must be objects");
            };
            let document = match document.contains_key("_id") {
                true => document,
                false => {
                    let mut with_id = doc! { "_id": bson::oid::ObjectId::new() };
                    with_id.extend(document);
                    with_id
                }
            };
            let id = document.get("_id").cloned().unwrap_or(Bson::Null);
            let taken = state.collections.get(&namespace).is_some_and(|stored| {
                stored.iter().any(|d| {
                    d.get("_id")
                        .is_some_and(|d| compare_values(d, &id) == Ordering::Equal)
                })
            });
            if taken {
                errors.push(doc! {
                    "index": index as i32,
                    "code": DUPLICATE_KEY,
                    "errmsg": format!("E11000 duplicate key error collection: {namespace} index: _id_ dup key: {{ _id: {id} }}"),
                });
                if ordered {
                    break;
                }
                continue;
            }
            let mut event = change_event("insert", db, coll, id);
            event.insert("fullDocument", document.clone());
            state.append(event);
            state.append_oplog(doc! { "op": "i", "ns": &namespace, "o": document, "v": 2_i64, "wall": DateTime::now() });
            inserted += 1;
        }
        drop(state);
        self.appended.notify_waiters();
        let mut reply = doc! { "n": inserted, "ok": 1.0 };
        if !errors.is_empty() {
            reply.insert("writeErrors", errors);
        }
        reply
    }

    /// `delete`: removes the documents each statement's `q` matches (the first only with `limit: 1`)
    /// and logs each as the server would, a delete event and a `d` oplog entry.
    pub(super) fn delete(&self, body: &Document) -> Document {
        let namespace = namespace(body, "delete");
        let Some((db, coll)) = namespace.split_once('.') else {
            return error(BAD_VALUE, "delete without a namespace");
        };
        let statements = body.get_array("deletes").cloned().unwrap_or_default();
        let mut state = lock(&self.state);
        let mut deleted = 0;
        for statement in statements {
            let Bson::Document(statement) = statement else {
                return error(BAD_VALUE, "delete statements must be objects");
            };
            let filter = statement.get_document("q").cloned().unwrap_or_default();
            let one = matches!(
                statement.get("limit"),
                Some(Bson::Int32(1) | Bson::Int64(1))
            );
            let mut ids = Vec::new();
            for document in state.collections.get(&namespace).into_iter().flatten() {
                match matches(document, &filter) {
                    Ok(true) => ids.push(document.get("_id").cloned().unwrap_or(Bson::Null)),
                    Ok(false) => {}
                    Err(reason) => return error(BAD_VALUE, &reason),
                }
            }
            ids.truncate(if one { 1 } else { ids.len() });
            for id in ids {
                state.append(change_event("delete", db, coll, id.clone()));
                state.append_oplog(doc! { "op": "d", "ns": &namespace, "o": { "_id": id }, "v": 2_i64, "wall": DateTime::now() });
                deleted += 1;
            }
        }
        drop(state);
        self.appended.notify_waiters();
        doc! { "n": deleted, "ok": 1.0 }
    }
}
