"""The gpu profile for a GPU machine: wheel sets to resolve, fetch and carry (wheels.py), and\nthe minimal vLLM worker sets (vllm-X-min.txt)."""
