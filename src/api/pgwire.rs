//! The PostgreSQL wire endpoint (default 127.0.0.1:5433, database `sokana`) for psql, DBeaver,
//! Grafana, Metabase and psycopg. pgwire speaks the protocol and datafusion-postgres answers the
//! catalog queries clients send on connect (`pg_catalog`, `SET`, `SHOW`, transactions); every
//! query itself goes through the query engine, so it gets the same sandbox, limits, cache and log
//! as the HTTP API. Logins are checked by `auth` with the password sent in clear text, which is
//! what lets the server keep only an argon2 hash (use TLS, or loopback, as by default).

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::hooks::{HookClient, QueryHook};
use datafusion_postgres::pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, METADATA_DATABASE, METADATA_USER, PgWireConnectionState, PgWireServerHandlers,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::Authentication;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, SinkExt, StreamExt};

use crate::auth::{Auth, AuthError, Device, Permission, WireLogin};
use crate::query::engine::{Caller, QueryEngine, QueryRequest};
use crate::query::{Params, QueryError};

/// The one database name the endpoint answers to.
const DATABASE: &str = "sokana";
/// Where the login is kept in the connection's metadata (server side only): the API key's id, or
/// the user and the digest of their password hash at login (see [`WireLogin`]).
const KEY: &str = "sokana.key";
const USER: &str = "sokana.user";
const CREDENTIAL: &str = "sokana.credential";

/// Binds `addr` and serves connections in the background until the task is aborted; returns the
/// task and the address bound (the chosen port when `addr` has port 0).
pub async fn start(
    addr: SocketAddr,
    engine: Arc<QueryEngine>,
    auth: Arc<Auth>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let acceptor = tls.map(datafusion_postgres::pgwire::tokio::TlsAcceptor::from);
    engine.install_pg_catalog().map_err(std::io::Error::other)?;
    let ctx = Arc::new(engine.session().map_err(std::io::Error::other)?);
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(Sandbox { engine: engine.clone(), auth: auth.clone() }),
        Arc::new(datafusion_postgres::hooks::set_show::SetShowHook),
        Arc::new(datafusion_postgres::hooks::transactions::TransactionStatementHook),
    ];
    let session = Arc::new(DfSessionService::new_with_hooks(ctx, hooks));
    let handlers = Arc::new(Handlers {
        simple: session.clone(),
        extended: Arc::new(Extended { inner: session, engine, auth: auth.clone() }),
        startup: Arc::new(PasswordStartup {
            auth,
            parameters: DefaultServerParameterProvider::default(),
            require_tls: acceptor.is_some(),
        }),
    });
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("the PostgreSQL wire endpoint on {addr} (server.pgwire): {e}"))
    })?;
    let bound = listener.local_addr()?;
    let accepting = tokio::spawn(async move {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "pgwire: accepting a connection failed");
                    continue;
                }
            };
            let (handlers, acceptor) = (handlers.clone(), acceptor.clone());
            tokio::spawn(async move {
                // Garbage, a dropped client or a protocol error ends this connection only.
                if let Err(e) = datafusion_postgres::pgwire::tokio::process_socket(socket, acceptor, handlers).await {
                    tracing::info!(peer = %peer, error = %e, "pgwire connection ended with an error");
                }
            });
        }
    });
    Ok((accepting, bound))
}

struct Handlers {
    simple: Arc<DfSessionService>,
    extended: Arc<Extended>,
    startup: Arc<PasswordStartup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.simple.clone()
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.extended.clone()
    }
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message.into())))
}

fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message.into())))
}

/// Password login (sent in clear, checked against the stored hash) into database `sokana`.
struct PasswordStartup {
    auth: Arc<Auth>,
    parameters: DefaultServerParameterProvider,
    /// With a certificate configured, a client that did not ask for TLS is refused before it
    /// sends a password.
    require_tls: bool,
}

#[async_trait]
impl StartupHandler for PasswordStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                if self.require_tls && !client.is_secure() {
                    return Err(fatal("28000", "this server accepts TLS connections only (sslmode=require)"));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let database = client.metadata().get(METADATA_DATABASE).cloned();
                if let Some(database) = database.filter(|d| d != DATABASE) {
                    return Err(fatal(
                        "3D000",
                        format!("database \"{database}\" does not exist (connect to \"{DATABASE}\")"),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let password = password.into_password()?;
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                let device = Device { user_agent: "postgresql".into(), ip: Some(client.socket_addr().ip()) };
                match self.auth.verify_wire(&user, &password.password, &device).await {
                    Ok((identity, login)) if identity.may(Permission::RunSql) => {
                        let metadata = client.metadata_mut();
                        match login {
                            WireLogin::ApiKey { id } => metadata.insert(KEY.into(), id),
                            WireLogin::Password { user, credential } => {
                                metadata.insert(USER.into(), user);
                                metadata.insert(CREDENTIAL.into(), credential)
                            }
                        };
                        finish_authentication(client, &self.parameters).await?;
                    }
                    Ok((identity, _)) => {
                        return Err(fatal("42501", format!("role {} may not run SQL", identity.role)));
                    }
                    Err(AuthError::InvalidCredentials | AuthError::InvalidMfa) => {
                        return Err(fatal("28P01", format!("password authentication failed for user \"{user}\"")));
                    }
                    Err(e) => return Err(fatal("28000", e.to_string())),
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Queries run through the engine; the session statements clients send (`SET` of client
/// settings, `SHOW`, transactions) are answered by datafusion-postgres's hooks; everything else is
/// refused. A `SET` of any other setting is acknowledged and ignored, because it would otherwise
/// change the session shared by every connection.
struct Sandbox {
    engine: Arc<QueryEngine>,
    auth: Arc<Auth>,
}

/// Settings a client may set for its own connection.
const CLIENT_SETTINGS: &[&str] = &[
    "statement_timeout",
    "datestyle",
    "bytea_output",
    "intervalstyle",
    "application_name",
    "extra_float_digits",
    "search_path",
];

enum Verdict {
    Query,
    PassOn,
    IgnoreSet,
    Refuse,
}

fn judge(statement: &Statement) -> Verdict {
    match statement {
        Statement::Query(_) | Statement::Explain { .. } => Verdict::Query,
        Statement::Set(Set::SingleAssignment { variable, .. })
            if CLIENT_SETTINGS.contains(&variable.to_string().to_ascii_lowercase().as_str()) =>
        {
            Verdict::PassOn
        }
        Statement::Set(Set::SetTimeZone { .. }) => Verdict::IgnoreSet,
        Statement::Set(_) => Verdict::IgnoreSet,
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. } => Verdict::PassOn,
        _ => Verdict::Refuse,
    }
}

fn refused() -> PgWireError {
    user_error("42501", "only queries (SELECT, WITH … SELECT) run on the warehouse")
}

/// Who the connection acts as now: its login checked again before every statement, so a revoked
/// key, a disabled user, a new password or a new role takes effect at once, as over HTTP.
async fn caller(auth: &Auth, client: &(impl ClientInfo + ?Sized)) -> PgWireResult<Caller> {
    let metadata = client.metadata();
    let login = match (metadata.get(KEY), metadata.get(USER), metadata.get(CREDENTIAL)) {
        (Some(id), _, _) => WireLogin::ApiKey { id: id.clone() },
        (None, Some(user), Some(credential)) => {
            WireLogin::Password { user: user.clone(), credential: credential.clone() }
        }
        _ => return Err(fatal("28000", "this connection has not logged in")),
    };
    let identity = match auth.recheck_wire(&login).await {
        Ok(identity) => identity,
        Err(AuthError::Store(e)) => {
            tracing::error!(error = %e, "pgwire: the login could not be checked again");
            return Err(user_error("58000", "the login could not be checked; try again"));
        }
        Err(e) => return Err(fatal("28000", format!("this connection's login is no longer valid: {e}"))),
    };
    if !identity.may(Permission::RunSql) {
        return Err(user_error("42501", format!("role {} may not run SQL", identity.role)));
    }
    Ok(Caller {
        scope: identity.scope().to_string(),
        user: identity.user,
        origin: "pgwire",
        request_id: uuid::Uuid::new_v4().to_string(),
        address: Some(client.socket_addr().ip()),
    })
}

/// A query's failure as the wire protocol's error: its SQLSTATE by kind; an internal fault's detail
/// goes to the log, and the client is told only its request id.
fn wire_error(e: QueryError, request_id: &str) -> PgWireError {
    if e.is_internal() {
        tracing::error!(request_id, error = %e, "pgwire: a query failed inside the engine");
    }
    user_error(e.sqlstate(), e.public_message(request_id))
}

/// Runs `sql` through the engine and encodes the rows in `format`. A result over the row cap is
/// streamed instead of collected, since wire clients expect whole results.
async fn answer(
    engine: &Arc<QueryEngine>,
    sql: String,
    params: Params,
    caller: Caller,
    format: &Format,
    options: Arc<FormatOptions>,
) -> PgWireResult<Response> {
    let request_id = caller.request_id.clone();
    let request = QueryRequest { sql, engine: engine.default_engine(), params, page: None, caller };
    let (schema, batches): (SchemaRef, futures::stream::BoxStream<'static, Result<RecordBatch, QueryError>>) =
        match engine.query(&request).await {
            Ok(output) => {
                let result = output.result.clone();
                let batches = result.batches.clone();
                (result.schema.clone(), futures::stream::iter(batches.into_iter().map(Ok)).boxed())
            }
            Err(QueryError::TooManyRows { .. }) => {
                let stream = engine.stream(&request).await.map_err(|e| wire_error(e, &request_id))?;
                (stream.schema, stream.batches)
            }
            Err(e) => return Err(wire_error(e, &request_id)),
        };
    let fields = Arc::new(arrow_schema_to_pg_fields(&schema, format, Some(options))?);
    let encoding = fields.clone();
    let rows = batches
        .map(move |batch| -> Box<dyn Iterator<Item = PgWireResult<_>> + Send> {
            match batch {
                Ok(batch) => encode_recordbatch(encoding.clone(), batch),
                Err(e) => Box::new(std::iter::once(Err(wire_error(e, &request_id)))),
            }
        })
        .flat_map(futures::stream::iter);
    Ok(Response::Query(QueryResponse::new(fields, rows)))
}

#[async_trait]
impl QueryHook for Sandbox {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match judge(statement) {
            Verdict::Query => {
                let caller = match caller(&self.auth, client).await {
                    Ok(caller) => caller,
                    Err(e) => return Some(Err(e)),
                };
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                Some(
                    answer(&self.engine, statement.to_string(), Params::None, caller, &Format::UnifiedText, options)
                        .await,
                )
            }
            Verdict::PassOn => None,
            Verdict::IgnoreSet => Some(Ok(Response::Execution(Tag::new("SET")))),
            Verdict::Refuse => Some(Err(refused())),
        }
    }

    /// A query's Describe comes from the engine's plan as the caller's role sees it: a table the
    /// role may not read is refused, as running the query would be.
    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match judge(statement) {
            Verdict::Refuse => Some(Err(refused())),
            Verdict::Query => {
                let caller = match caller(&self.auth, client).await {
                    Ok(caller) => caller,
                    Err(e) => return Some(Err(e)),
                };
                let described = self.engine.describe(&statement.to_string(), &caller.scope).await;
                Some(described.map_err(|e| wire_error(e, &caller.request_id)))
            }
            Verdict::PassOn | Verdict::IgnoreSet => None,
        }
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match judge(statement) {
            Verdict::Refuse => Some(Err(refused())),
            Verdict::IgnoreSet => Some(Ok(Response::Execution(Tag::new("SET")))),
            // Queries never reach here: `Extended::do_query` sends them to the engine first.
            Verdict::Query | Verdict::PassOn => None,
        }
    }
}

/// `portal` with its `uuid`, `json` and `jsonb` parameters as the text they stand for, or `None`
/// when it has none. arrow-pg 0.16 reads them as text and fails ("cannot convert postgres type
/// uuid"), although drivers (psycopg, JDBC) send UUIDs and JSON values typed as such.
fn textual_as_text<S: Clone>(portal: &Portal<S>) -> PgWireResult<Option<Portal<S>>> {
    use datafusion_postgres::pgwire::api::Type;
    use datafusion_postgres::pgwire::api::stmt::StoredStatement;
    let is_textual = |t: &Type| *t == Type::UUID || *t == Type::JSON || *t == Type::JSONB;
    let textual = |t: &Option<Type>| t.as_ref().is_some_and(is_textual);
    let types = &portal.statement.parameter_types;
    if !types.iter().any(textual) {
        return Ok(None);
    }
    let mut parameters = portal.parameters.clone();
    let mut codes = Vec::with_capacity(parameters.len());
    for (i, value) in parameters.iter_mut().enumerate() {
        let binary = portal.parameter_format.is_binary(i);
        let ty = types.get(i).cloned().flatten().filter(|t| binary && is_textual(t));
        let (Some(ty), Some(bytes)) = (ty, value.as_ref()) else {
            codes.push(i16::from(binary));
            continue;
        };
        *value = Some(if ty == Type::UUID {
            let uuid =
                uuid::Uuid::from_slice(bytes).map_err(|e| user_error("22P02", format!("parameter ${}: {e}", i + 1)))?;
            bytes::Bytes::from(uuid.hyphenated().to_string())
        } else if ty == Type::JSONB {
            // Binary jsonb is a version byte (1) and the text.
            bytes.slice(1.min(bytes.len())..)
        } else {
            bytes.clone()
        });
        codes.push(0);
    }
    let retyped = types.iter().map(|t| if textual(t) { Some(Type::TEXT) } else { t.clone() }).collect();
    let statement = StoredStatement::new(portal.statement.id.clone(), portal.statement.statement.clone(), retyped);
    let mut retyped_portal = Portal::new_cursor(portal.name.clone(), Arc::new(statement));
    retyped_portal.parameter_format = Format::Individual(codes);
    retyped_portal.parameters = parameters;
    retyped_portal.result_column_format = portal.result_column_format.clone();
    Ok(Some(retyped_portal))
}

/// The extended protocol (prepared statements with parameters): datafusion-postgres parses and
/// describes; queries execute through the engine with the portal's parameters and formats.
struct Extended {
    inner: Arc<DfSessionService>,
    engine: Arc<QueryEngine>,
    auth: Arc<Auth>,
}

#[async_trait]
impl ExtendedQueryHandler for Extended {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (_, parsed) = &portal.statement.statement;
        let Some((statement, plan)) = parsed else {
            return ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows).await;
        };
        if !matches!(judge(statement), Verdict::Query) {
            return ExtendedQueryHandler::do_query(&*self.inner, client, portal, max_rows).await;
        }
        let types = plan.get_parameter_types().map_err(|e| user_error("22023", e.to_string()))?;
        let mut ordered: Vec<(usize, Option<DataType>)> = types
            .into_iter()
            .filter_map(|(id, ty)| id.trim_start_matches('$').parse::<usize>().ok().map(|n| (n, ty)))
            .collect();
        ordered.sort_by_key(|(n, _)| *n);
        let inferred: Vec<Option<&DataType>> = ordered.iter().map(|(_, ty)| ty.as_ref()).collect();
        let as_text = textual_as_text(portal)?;
        let params = match deserialize_parameters(as_text.as_ref().unwrap_or(portal), &inferred)? {
            ParamValues::List(values) if values.is_empty() => Params::None,
            ParamValues::List(values) => Params::Positional(values.into_iter().map(|v| v.value).collect()),
            ParamValues::Map(map) => Params::Named(map.into_iter().map(|(k, v)| (k, v.value)).collect()),
        };
        let caller = caller(&self.auth, client).await?;
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        answer(&self.engine, statement.to_string(), params, caller, &portal.result_column_format, options).await
    }
}
