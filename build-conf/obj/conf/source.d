build-conf/obj/conf/source.o: conf/source.c conf/internal.h conf/conf.h
conf/internal.h:
conf/conf.h:
