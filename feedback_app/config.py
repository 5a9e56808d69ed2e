"""``AppConfig``: the feedback app's one typed config (YAML in ``configs/app/``, then CLI flags)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from feedback_app.redact import RedactionSettings
from rlhf.config import Config


class AppConfig(Config):
    """Store, project, server and generation settings of the feedback app."""

    database_url: str = Field(
        "sqlite:///runs/feedback/feedback.db",
        description="SQLAlchemy URL: sqlite:///PATH (default, no set-up) or postgresql://... for a team",
    )
    secret_file: str | None = Field(
        None, description="file holding the token-signing secret (default: beside the SQLite database, "
                          "or runs/feedback/secret.key); created on first start, kept so restarts log no one out")
    project: str = Field("default", description="project name (rankings, prompts and items belong to it)")
    k: int = Field(4, ge=2, le=6, description="candidate replies per prompt shown together (K)")
    reviewers_per_item: int = Field(1, ge=1, le=50, description="reviewers who rank each item")
    guideline: str = Field("Rank the replies from best (1) to worst. Equal ranks mean a tie.",
                           description="guideline text shown to reviewers")
    guideline_version: str = Field("1", description="guideline version stored with every ranking")
    lease_seconds: int = Field(900, ge=5, description="seconds a handed-out item stays reserved for its reviewer")
    host: str = Field("127.0.0.1", description="address `rlhf app serve` listens on")
    port: int = Field(8765, ge=1, le=65535, description="port `rlhf app serve` listens on")
    behind_proxy: bool = Field(
        False, description="a TLS proxy on this machine or network forwards HTTPS to the app: trust its "
                           "X-Forwarded-Proto/-For headers (from --forwarded-allow-ips only) and mark cookies Secure")
    forwarded_allow_ips: str = Field("127.0.0.1", description="comma-separated addresses of the TLS proxies whose "
                                                              "forwarded headers are trusted (with --behind-proxy)")
    token_max_age: int = Field(7 * 24 * 3600, ge=60, description="seconds a login token stays valid")
    login_attempts_per_minute: int = Field(
        10, ge=1, description="failed logins an account may have before each further attempt waits (1 s, doubling "
                              "up to 60 s; forgotten after 15 quiet minutes)")
    login_attempts_per_address: int = Field(60, ge=1, description="login attempts per client address per minute "
                                                                  "(counted before the password is checked)")
    session_check_seconds: float = Field(
        2.0, ge=0.0, le=60.0, description="seconds a server process may trust its cached copy of an account's role "
                                          "and session version; a logout, reset, role change or disable reaches "
                                          "other processes on the same database within this bound")
    busy_timeout_ms: int = Field(30000, ge=100, description="SQLite busy timeout (ms) before a locked write fails")
    # Candidate generation
    model: str = Field("bundled", description="policy that writes candidates: 'bundled', a model directory or HF id")
    max_new_tokens: int = Field(96, ge=1, le=4096, description="new tokens per candidate reply at most")
    temperature: float = Field(0.8, ge=0.0, le=5.0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="nucleus sampling mass")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass in generation")
    seed: int = Field(0, description="random seed for generation")
    agent_reply_as_candidate: bool = Field(
        False, description="a prompt with an agent's real reply (from a chat log) gets it as one of its K candidates, "
                           "at a random position, beside K-1 generated ones; reviewers cannot tell which, the "
                           "dashboard shows how often it wins, exports mark it")
    # Personal data (feedback_app/redact.py)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings,
                                         description="personal data replaced by placeholders before storage")
    # Export
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of prompts in the test split (by prompt hash)")
    min_test_prompts: int = Field(0, ge=0, description="hold out at least this many prompts (never more than half) "
                                  "in the test split, raising test_fraction on small data: the reward model's gate "
                                  "needs 10 or more held-out prompts for its interval (0: the plain test_fraction)")

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("must be a SQLAlchemy URL such as sqlite:///runs/feedback/feedback.db")
        return value

    def sqlite_path(self) -> Path | None:
        """The database file for a SQLite URL, else None."""
        return sqlite_path(self.database_url)

    def resolved_secret_file(self) -> Path:
        if self.secret_file:
            return Path(self.secret_file)
        db = self.sqlite_path()
        return (db.parent if db else Path("runs/feedback")) / "secret.key"


# ---------------------------------------------------------------------------------------------------
# One typed config per command beyond serve/import/generate (those take AppConfig itself). Each is
# built by ``rlhf.config.config_from_args``: a YAML file, then flags; the flags keep the shapes users
# know (a positional OUT or NAME, repeatable --reviewer/--round, --include-flagged alone).


class DemoConfig(AppConfig):
    """``rlhf app demo``: the app on the embedded defaults, with example prompts and an admin."""

    prompts: str = Field("configs/prompts/support_questions.jsonl",
                         description="prompts to import first (JSONL or CSV)")
    admin: str = Field("admin", description="admin account created when missing "
                                            "(password: $RLHF_ADMIN_PASSWORD, or generated and printed)")
    simulated_reviewers: bool = Field(
        False, description="once the candidates exist, mark a few gold items (by simulated_rule) and have three "
                           "scripted accounts (sim-careful-1, sim-careful-2 following simulated_rule with a little "
                           "noise, sim-careless ranking by it backwards) rank part of the queue through the REST API, so "
                           "the dashboard's reviewer quality has a reviewer to stop trusting; once per database")
    simulated_rule: str = Field("-len(text)", description="what the careful scripted reviewers and the gold items "
                                                          "prefer (an expression of `text`; default: the shorter reply)")
    simulated_rankings: int = Field(8, ge=1, le=1000, description="rankings per scripted reviewer")
    simulated_gold: int = Field(3, ge=0, le=100, description="gold items marked for the scripted reviewers")


class ExportConfig(AppConfig):
    """``rlhf app export``: rankings as TRL datasets (pairwise + K-wise + manifest), or the prompt set."""

    out: str | None = Field(None, description="output folder for the datasets")
    prompts: str | None = Field(None, description="instead (or also) write the prompt set PPO reads to this JSONL file")
    agent_replies: str | None = Field(None, description="instead (or also) write agents' reference replies (chat-log "
                                      "imports) as 'rlhf sft' prompt-completion rows to this JSONL file")
    reviewers: list[str] | None = Field(None, description="only these reviewers' rankings (--reviewer, repeatable)")
    rounds: list[int] | None = Field(None, description="only these generation rounds (--round, repeatable)")
    source: str = Field("all", description="all, human or simulated rankings")
    include_flagged: bool = Field(False, description="keep flagged replies and items")
    min_gold_accuracy: float | None = Field(None, description="leave out every ranking of reviewers whose gold "
                                            "accuracy is below this (0..1); recorded in the manifest")
    min_agreement: float | None = Field(None, description="leave out every ranking of reviewers whose agreement "
                                        "with the others' consensus is below this (0..1; 0.5 is chance)")
    include_pending_demonstrations: bool = Field(
        False, description="OUT/sft (demonstrations for 'rlhf sft') also takes those not yet accepted by an admin")


class AbCreateConfig(AppConfig):
    """``rlhf app ab create``: an A/B set from two ``rlhf generate --output`` files of the same prompts."""

    name: str = Field(..., description="name of the set")
    policy_a: str = Field(..., description="name of policy A (e.g. base)")
    replies_a: str = Field(..., description="policy A's replies (JSONL)")
    policy_b: str = Field(..., description="name of policy B (e.g. aligned)")
    replies_b: str = Field(..., description="policy B's replies (JSONL), same prompts")
    judgements_per_item: int = Field(1, description="different reviewers per item")


class AbReportConfig(AppConfig):
    """``rlhf app ab report``: win rate of policy A with its interval, and the position bias."""

    name: str = Field(..., description="name or id of the set")
    output: str | None = Field(None, description="also write the full report (every judgement) here (JSON)")


class SimulateConfig(Config):
    """``rlhf simulate``: scripted reviewers rank items (or judge an A/B set) through a running app's
    REST API. Everything they write is marked simulated."""

    url: str = Field("http://127.0.0.1:8765", description="address of a running `rlhf app serve`")
    accounts: list[str] = Field(["sim-1", "sim-2", "sim-3"], description="reviewer accounts (comma-separated)")
    password: str | None = Field(None, description="the accounts' password (default: $RLHF_SIM_PASSWORD)")
    create_accounts: bool = Field(False, description="create missing accounts first (needs --admin and "
                                                     "$RLHF_ADMIN_PASSWORD)")
    admin: str | None = Field(None, description="admin account used by --create-accounts")
    rule: str = Field(..., description="score of a reply: expression of `text`, or module:function")
    noise: float = Field(0.0, description="std of Gaussian noise added to each score")
    disagreement: float = Field(0.0, description="share of accounts using the flipped rule")
    seed: int = Field(0, description="random seed (noise, flipped accounts)")
    max_rankings: int | None = Field(None, description="per account at most (default: until done)")
    ab: str | None = Field(None, description="judge the blind A/B set with this name or id instead of ranking items")

    @field_validator("accounts", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):  # the flag's form: "sim-1,sim-2"
            return [name.strip() for name in value.split(",") if name.strip()]
        return value


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a SQLite URL (``sqlite:///relative.db``, ``sqlite:////abs.db``, with or
    without a driver or query string); None for another database or an in-memory one. The one place
    the URL is taken apart, by SQLAlchemy's own parser."""
    from sqlalchemy.engine import make_url  # here, not at the top: the config stays light to import

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)
