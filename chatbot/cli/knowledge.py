"""flask knowledge: feed the assistant documents, pages and approved answers, and try questions."""
from __future__ import annotations

import mimetypes
from pathlib import Path

import click
from flask.cli import with_appcontext

from chatbot.cli.shared import Address, number_key, operator_errors, services
from chatbot.errors import AIError
from chatbot.knowledge import sources
from chatbot.models import KnowledgeSource

# How much of a passage `search` shows: enough to recognise it on one line.
PASSAGE_SHOWN = 100


def _number_shown(key: str | None) -> str:
    return "all numbers" if key is None else (key or "default number")


@click.group("knowledge")
def knowledge_group():
    """Documents, web pages and approved answers the assistant answers from."""


@knowledge_group.command("add")
@click.argument("path_or_url")
@click.option("--number", type=Address(), help="Only for this number (default: every number).")
@click.option("--title", default="", help="The name answers cite (default: the document's own title).")
@click.option("--sitemap", is_flag=True, help="For a URL: index the pages its site's sitemap lists too.")
@with_appcontext
@operator_errors
def add_command(path_or_url: str, number: str | None, title: str, sitemap: bool) -> None:
    """Add a file (PDF, DOCX, Markdown, text, HTML) or a web page; the worker indexes it."""
    built = services()
    key = number_key(number)
    try:
        if path_or_url.startswith(("http://", "https://")):
            source = sources.add_url(built.queue, path_or_url, key, title, sitemap=sitemap)
        else:
            path = Path(path_or_url)
            if not path.is_file():
                raise click.ClickException(f"no file {path_or_url!r} (give a file's path or an http(s) URL)")
            limit = built.config.knowledge_max_file_bytes
            with path.open("rb") as file:
                data = file.read(limit + 1)  # one byte past the limit says "too large": no need for the rest
            source = sources.add_file(built.queue, data, path.name, limit, key, title,
                                      mimetypes.guess_type(path.name)[0] or "")
    except sources.KnowledgeInputError as error:
        raise click.ClickException(str(error)) from error
    if source.status == "failed":
        raise click.ClickException(f"source {source.id} {source.title}: failed: {source.reason}")
    click.echo(f"added source {source.id} {source.title} for {_number_shown(key)}: waiting for the worker to index it "
               f"(see: flask knowledge list)")


@knowledge_group.command("list")
@with_appcontext
@operator_errors
def list_command() -> None:
    """One line per source: id, title, status, passages, number, reason."""
    rows = list(KnowledgeSource.listed())
    if not rows:
        click.echo("no knowledge yet (add some with: flask knowledge add PATH_OR_URL)")
        return
    for source in rows:
        line = (f"{source.id:>4}  {source.title}  {source.status}  {source.passage_count} passages  "
                f"{_number_shown(source.number)}")
        click.echo(line + (f"  {source.reason}" if source.reason else ""))


@knowledge_group.command("search")
@click.argument("query")
@click.option("--number", type=Address(), help="As asked of this number (default: knowledge for every number).")
@with_appcontext
@operator_errors
def search_command(query: str, number: str | None) -> None:
    """Show the passages (with their scores) a question would be given, or the approved answer."""
    built = services()
    try:
        found, approved, score = sources.try_question(built.retriever, built.ai_factory.current(), query,
                                                      number_key(number))
    except AIError as error:
        raise click.ClickException(f"embeddings: {error}\nfix: check EMBEDDING_MODEL and the API key "
                                   "(flask check-config)") from error
    if approved is not None:
        click.echo(f"approved answer {approved.id} (score {score:.3f}) answers it, with no model call:\n"
                   f"  {approved.answer}")
    if found.best_score is None:
        click.echo("no indexed knowledge for this number")
        return
    if not found.passages:
        click.echo(f"no passage scores {built.retriever.min_score:g} or more (best {found.best_score:.3f}): "
                   "the question would be listed as not covered")
        return
    for passage in found.passages:
        heading = f" › {passage.heading}" if passage.heading else ""
        text = " ".join(passage.text.split())
        click.echo(f"{passage.score:.3f}  {passage.title}{heading}: "
                   f"{text[:PASSAGE_SHOWN]}{'…' if len(text) > PASSAGE_SHOWN else ''}")


@knowledge_group.command("sync")
@click.argument("source_id", type=int, required=False)
@with_appcontext
@operator_errors
def sync_command(source_id: int | None) -> None:
    """Read a source (or every source) again; changed ones are indexed anew."""
    if source_id is not None and KnowledgeSource.get_or_none(KnowledgeSource.id == source_id) is None:
        raise click.ClickException(f"no source {source_id} (see: flask knowledge list)")
    queued = sources.sync(services().queue, source_id)
    click.echo(f"queued {queued} source(s) to be read again")


@knowledge_group.command("remove")
@click.argument("source_id", type=int)
@with_appcontext
@operator_errors
def remove_command(source_id: int) -> None:
    """Delete a source and its passages."""
    if not sources.remove(source_id):
        raise click.ClickException(f"no source {source_id} (see: flask knowledge list)")
    click.echo(f"removed source {source_id}")


@knowledge_group.command("approve")
@click.option("--question", required=True, help="The question as customers ask it.")
@click.option("--answer", required=True, help="The answer sent, as written.")
@click.option("--number", type=Address(), help="Only for this number (default: every number).")
@with_appcontext
@operator_errors
def approve_command(question: str, answer: str, number: str | None) -> None:
    """Store an approved answer: a question like it gets this answer, with no model call."""
    try:
        approved = sources.approve(services().queue, question, answer, number_key(number), created_by="cli")
    except sources.KnowledgeInputError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"approved answer {approved.id} stored for {_number_shown(approved.number)}; "
               "it answers once the worker has embedded its question")
