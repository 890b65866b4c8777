#!/bin/sh
echo "setup $*: APP_ENV=$APP_ENV"
