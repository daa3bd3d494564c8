"""The business's own knowledge: sources turned into passages, passages found for a question.

extract.py reads files (PDF, DOCX, Markdown, text, HTML), pages.py fetches web pages and sitemaps,
passages.py splits text by headings, embeddings.py talks to the embeddings API, index.py stores a
source's passages, retrieval.py finds the passages for a question (dense and lexical, fused).
"""
