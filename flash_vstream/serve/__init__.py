"""``flash-vstream serve``: a local web page that streams a video into a model's memory and answers questions.

:mod:`flash_vstream.serve.app` holds the FastAPI app (one ``StreamSession`` per browser tab),
:mod:`flash_vstream.serve.command` the command, ``static/`` the page. FastAPI and uvicorn are the ``serve``
extra (``pip install "flash-vstream[serve]"``); nothing here imports them until the command runs.
"""
